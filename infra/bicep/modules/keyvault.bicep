// Key Vault in RBAC mode holding the sink tokens and any further secret settings. A secret is
// created only for a value that was given: an app setting that refers to a missing secret would
// keep the literal reference, and the bridge refuses to start on one (by design). The app reads
// the secrets through Key Vault references resolved with its user-assigned identity, which holds
// Key Vault Secrets User on this vault (rbac.bicep).
@description('Key Vault name (3-24 letters, digits and hyphens, globally unique).')
param name string

@description('Region of the vault.')
param location string

@description('Tags of the vault.')
param tags object = {}

@secure()
@description('Dynatrace API token (metrics.ingest scope); empty: no secret.')
param dynatraceApiToken string = ''

@secure()
@description('Better Stack source token; empty: no secret.')
param betterstackSourceToken string = ''

@secure()
@description('Unleash client or backend API token; empty: no secret.')
param unleashApiToken string = ''

@secure()
@description('Further secret app settings: setting name -> value.')
param secretSettings object = {}

@description('The names in secretSettings whose value is not empty (computed by the caller, so no output depends on a secret).')
param secretSettingNames array = []

@description('Whether a Dynatrace token was given (computed by the caller, so no output depends on a secret).')
param hasDynatraceApiToken bool = false

@description('Whether a Better Stack token was given.')
param hasBetterstackSourceToken bool = false

@description('Whether an Unleash token was given.')
param hasUnleashApiToken bool = false

var dynatraceSecretName = 'dynatrace-api-token'
var betterstackSecretName = 'betterstack-source-token'
var unleashSecretName = 'unleash-api-token'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    // Soft delete is always on; the shortest retention, and no purge protection (once on it can
    // never be turned off), so `azd down --purge` can remove a deleted vault at once. createMode
    // stays the default: 'recover' fails when there is no deleted vault to recover. A new
    // environment never meets its old vault anyway: main.bicep names the vault after the identity.
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    // Key Vault references do not work on Flex Consumption when the vault is network-restricted.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource dynatraceSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (hasDynatraceApiToken) {
  parent: vault
  name: dynatraceSecretName
  properties: {
    value: dynatraceApiToken
    contentType: 'DYNATRACE_API_TOKEN'
  }
}

resource betterstackSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (hasBetterstackSourceToken) {
  parent: vault
  name: betterstackSecretName
  properties: {
    value: betterstackSourceToken
    contentType: 'BETTERSTACK_SOURCE_TOKEN'
  }
}

resource unleashSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (hasUnleashApiToken) {
  parent: vault
  name: unleashSecretName
  properties: {
    value: unleashApiToken
    contentType: 'UNLEASH_API_TOKEN'
  }
}

// Secret names allow letters, digits and hyphens: GITHUB_WEBHOOK_SECRET -> setting-github-webhook-secret.
resource settingSecrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [for settingName in secretSettingNames: {
  parent: vault
  name: 'setting-${replace(toLower(settingName), '_', '-')}'
  properties: {
    value: secretSettings[settingName]
    contentType: settingName
  }
}]

// Versionless secret URIs: the app follows the latest version (re-read within 24 hours, or at
// once on any configuration change).
output id string = vault.id
output name string = vault.name
output vaultUri string = vault.properties.vaultUri
output dynatraceApiTokenUri string = hasDynatraceApiToken ? '${vault.properties.vaultUri}secrets/${dynatraceSecretName}' : ''
output betterstackSourceTokenUri string = hasBetterstackSourceToken ? '${vault.properties.vaultUri}secrets/${betterstackSecretName}' : ''
output unleashApiTokenUri string = hasUnleashApiToken ? '${vault.properties.vaultUri}secrets/${unleashSecretName}' : ''
@description('App setting name -> Key Vault reference, for every secret setting given.')
output settingReferences object = toObject(secretSettingNames, settingName => settingName, settingName => '@Microsoft.KeyVault(SecretUri=${vault.properties.vaultUri}secrets/setting-${replace(toLower(settingName), '_', '-')})')
